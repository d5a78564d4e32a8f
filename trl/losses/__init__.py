"""Pure loss functions: tensors in, `(loss, metrics)` out. They import only torch and never see a trainer."""
