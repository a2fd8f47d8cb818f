"""Tiny ImageNet (200 classes, 64x64): data, models, training and the quick diagnosis.

Layers, each importing only those below it:
    data, download, cache, synthetic, loaders, models_imagenet, best_model_imagenet,
    registry, seed                                                                     (bottom)
    runtime, checkpoint, distributed, loop, train                                      (the loop)
    diagnosis (subject, probes, measure, experiments, stats, verdict, run, report)     (above the loop)
    plotting                                                                           (used from the top)
    results, quick_diagnosis.py, notebooks/, benchmarks/                               (faces)
Nothing is imported here eagerly, so `import tinyimagenet` stays cheap.
"""
__version__ = "0.1.0"
