"""The engines the kit really runs: start-up, device detection, the kit's model files, same-model agreement.

- :mod:`.launch`: vLLM and llama.cpp command lines (llama-cpp-python's server and llama.cpp's native
  llama-server), started as managed servers (notebooks 00–03).
- :mod:`.failure`: an engine's own reason for not starting, read from its log (every lab that starts one).
- :mod:`.kinds`: the engines' names, for every module that branches on the engine.
- :mod:`.llamacpp_build`: the llama.cpp build the kit compiles and deploys (``data/engines/llamacpp_build.yaml``).
- :mod:`.device`: which accelerator and which vLLM build are here (every notebook's ``device``).
- :mod:`.model`: the shipped GGUF and its converted Hugging Face copy, found without a hub.
- :mod:`.agreement`: do both engines serve the same model? (notebook 00).
"""
