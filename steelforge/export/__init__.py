"""Release a trained model: a self-contained Hugging Face folder with a model card built from the run.

`export_checkpoint` (hf.py) turns an engine checkpoint (DCP) or an `hf/` folder into a folder that plain
`transformers` loads; `build_model_card` (model_card.py) writes its README.md from the run's own reports.
"""
