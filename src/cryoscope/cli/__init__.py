"""cryoscope.cli"""
