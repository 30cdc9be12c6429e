"""STOIC2021-style baseline: an inflated 3D ConvNet for COVID-19 and severity from chest CT,
with T2 (inference) and T3 (training) entry points and their images. See README.md."""
