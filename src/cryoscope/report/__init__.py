"""cryoscope.report"""
