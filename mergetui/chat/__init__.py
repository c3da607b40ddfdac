"""Talk to a checkpoint: load it for generation, stream replies off the UI thread, quick perplexity.

- `loader.load_for_chat(source, device=..., trust_remote_code=...) -> LoadedModel`
- `generate.generate_reply(loaded, messages, settings, on_text=..., stop=...) -> Reply`
- `perplexity.perplexity(loaded, text) -> PerplexityResult`
- `prompt.format_prompt(tokenizer, messages)`: the chat template, or a plain transcript
- `memory.choose_device(name, need_bytes)`: auto picks a device with room, or says why none has

Nothing here imports textual; torch and transformers are imported inside the functions.
"""
