"""Where the bytes go: KV-cache math and the paged-allocation simulator, the memory-bandwidth roofline,
resident-memory sampling, and the quantization ladder with its probe (notebooks 03, 04 and 05).
"""
