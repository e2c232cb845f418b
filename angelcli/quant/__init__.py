"""FP8 quantisation of BailingMoeV2 checkpoints (`angel quantize --fp8`).

Modules: fp8 (the number format and the three weight layouts), schemes (what each scheme writes), st_io (raw
safetensors streaming), stream (data-free schemes, shard by shard), calib_model / calib_data / calibrate
(static scheme through llmcompressor), dequant (reading FP8 outputs back), report (quality), run (the verb).
Nothing here is imported by `angel --help`; torch is imported by the modules that need it.
"""
