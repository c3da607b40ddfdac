"""What a checkpoint is: safetensors headers, the layer map, local folders and the HF cache.

Submodules: `safetensors_io` (headers, TensorInfo), `layers` (layer index and block kind from tensor
names), `inspect` (open_checkpoint -> Checkpoint), `locate` (find_local, looks_like_hub_id). Nothing
here imports torch at module level; only reading a pytorch_model.bin does.
"""
