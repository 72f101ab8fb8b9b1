"""The engines the kit really runs: start-up, device detection, the kit's model files, same-model agreement.

- :mod:`.launch`: vLLM and llama.cpp command lines, started as managed servers (notebooks 00–03).
- :mod:`.device`: which accelerator and which vLLM build are here (every notebook's ``device``).
- :mod:`.model`: the shipped GGUF and its converted Hugging Face copy, found without a hub.
- :mod:`.agreement`: do both engines serve the same model? (notebook 00).
"""
