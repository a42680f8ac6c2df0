"""Long-tailed data: LT builders, image sources, multi-view pipelines."""
