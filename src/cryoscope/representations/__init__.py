"""cryoscope.representations"""
