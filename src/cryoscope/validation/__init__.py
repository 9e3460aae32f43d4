"""cryoscope.validation"""
