"""The quick diagnosis: find out, by experiment, why a model does not learn.

    from tinyimagenet.diagnosis import diagnose, DiagnosisConfig, format_model
    result = diagnose(MyNet, train=train_ds, val=val_ds, num_classes=10, config=DiagnosisConfig(epochs=3))
    print("\n".join(format_model("MyNet", result)))
    report = run_diagnosis(DiagnosisConfig(models=["BaselineCNN"], dropout="legacy"))   # registry models

Modules: `causes` (the table: every cause, what measures it, its experiments, control and
suggestion), `rules` (the per-cause functions the table points at; it re-exports `judging`: the
tiers, Finding, Judging and FitPlan they share, `symptom_rules`: the symptoms read from the failing
run, and `screens`: the headroom screen's candidates), `thresholds` (every number, with why),
`recipe` (the optimizer, lr and batch when the user gives none), `subject` (the user's model, data,
loss and optimizer, normalized), `probes` (seeing dropout and ReLUs inside any forward), `measure`
(measurements without training), `experiments` (the loop and one-change runs), `stats` (tests),
`verdict` (evidence -> ranked causes -> PASS/FAIL/INCONCLUSIVE), `headroom` (the headroom screen
of a run that learns), `config` (DiagnosisConfig, loading the repo's data), `run` (the phases),
`report` (the report entry, text and JSON), `loss_checks` (the user's loss on synthetic logits);
`user_data` (the user's splits read as their code reads them), `contract` (the model's output and
the loss checked before anything costly), `errors` (UserInputError, what bad input raises).
The command-line face is ../quick_diagnosis.py.
"""
from .errors import UserInputError
from .report import format_model, format_report, to_json
from .run import DiagnosisConfig, diagnose, run_diagnosis

__all__ = ["DiagnosisConfig", "diagnose", "run_diagnosis", "format_model", "format_report", "to_json",
           "UserInputError"]
