"""ChestX-ray14 data: the label table, splits, preparation, input pipelines.

    labels      the 14 classes and the NIH table (shipped)
    splits      split_images(csv, "paper" | "official" | "chexnet", seed)
    prepare     python -m cxrjax.data.prepare --manual_dir NIH --data_dir OUT (TFDS builder in
                builder.py: raw uint8 records in ArrayRecord shards)
    pipeline    create_datasets(...) / ensure_prepared(...): grain train and eval batches
    synthetic   python -m cxrjax.data.synthetic --out DIR --n N --size S --seed K
    chestmnist  MedMNIST's chestmnist*.npz as a source

Kept import-free: decode workers are spawned processes that import this package.
"""
