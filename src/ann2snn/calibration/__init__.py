"""Threshold observers and calibration procedures."""
