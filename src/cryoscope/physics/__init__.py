"""cryoscope.physics"""
