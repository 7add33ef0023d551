"""ChestX-ray14 data: the label table, splits, preparation, input pipelines.

    labels      the 14 classes and the NIH table (shipped)
    splits      split_images(csv, "paper" | "official" | "chexnet", seed)
    nih_layout  the NIH download as users have it: scan its table and images, decode a PNG
    builder     the TFDS builder chest_xray14 (raw uint8 records in ArrayRecord shards)
    prepare     python -m cxrjax.data.prepare --manual_dir NIH --data_dir OUT (CLI over builder)
    pipeline    open_datasets(config, workdir): ensure_prepared + create_datasets, grain batches
    grain_workers  how many grain workers data.workers means; their shared memory released
    synthetic   python -m cxrjax.data.synthetic --out DIR --n N --size S --seed K
    chestmnist  MedMNIST's chestmnist*.npz as a source

Kept import-free: decode workers are spawned processes that import this package.
"""
