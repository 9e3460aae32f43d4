"""cryoscope.io"""
