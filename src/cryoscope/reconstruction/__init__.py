"""cryoscope.reconstruction"""
