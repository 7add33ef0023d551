"""ChestX-ray14 data: the label table, splits, preparation, input pipelines."""
