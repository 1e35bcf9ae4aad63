"""Files in and out: OpenAI checkpoints, Hugging Face folders, safetensors, GGUF, adapters and downloads.

This stage owns the bytes on disk: the one table of OpenAI checkpoint names and the TF bundle
format (`checkpoint.py`; one tensor's reads, whole or cast to 16 bits a slice at a time:
`tensor_reads.py`), Hugging Face's layout (`hf.py`) and the safetensors file format
(`safetensors_file.py`), telling layouts apart, loading any of them and converting between them
(`folders.py`), llama.cpp's GGUF file (`gguf.py`), LoRA adapters and their settings in run
folders (`adapters.py`) and in Hugging Face peft's adapter folder (`peft.py`), what makes an
export a complete model repository with its card (`model_card.py`), the run's chat template
(`chat_template.py`), a run's `documents.json`,
`best.json`, `training.json` and event curves (`run_record.py`), fetching OpenAI's released models
(`download.py`), models named by their Hugging Face Hub id (`hub.py`) and pushing a run there
(`push.py`). It builds `GPT2` objects from `model/` but knows nothing of training or
sampling.
"""
