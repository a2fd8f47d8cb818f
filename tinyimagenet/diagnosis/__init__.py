"""The quick diagnosis: find out, with controlled experiments, why a model does not learn.

    from tinyimagenet.diagnosis import DiagnosisConfig, run_diagnosis, format_report
    report = run_diagnosis(DiagnosisConfig(models=["BaselineCNN"], dropout="legacy"))
    print(format_report(report))

Modules: `checks` (measurements without training), `interventions` (fixed-batch fits with one
change each), `stats` (accuracy vs chance), `verdict` (evidence -> ranked causes), `run`
(orchestration), `report` (table and JSON). The command-line face is ../quick_diagnosis.py.
"""
from .report import format_report, to_json
from .run import ALL_MODELS, DiagnosisConfig, run_diagnosis

__all__ = ["ALL_MODELS", "DiagnosisConfig", "run_diagnosis", "format_report", "to_json"]
