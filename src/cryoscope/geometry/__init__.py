"""cryoscope.geometry"""
