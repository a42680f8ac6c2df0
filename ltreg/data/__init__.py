"""Long-tailed data: LT builders, image sources, multi-view pipelines.

``build`` (build_data, dataset_defaults, --data-arg parsing), ``builders`` (the registered benchmarks),
``folder`` (imagefolder-lt), ``hf`` (hf-lt), ``infer`` (settings read off the data), ``lt`` (LTDataset,
LTData, LT profiles, errors), ``sources`` (lazy image sources), ``views`` (augmentation pipelines).
"""
