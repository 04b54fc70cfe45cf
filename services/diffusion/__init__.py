"""The heavy engine shared by the services: torch + diffusers live here and nowhere in shared/.

- scenes / evaluation: the embedded model's world and the detectors that judge images;
- embedded / train_embedded: the tiny SD architecture and the script that trains it;
- loading / single_file: loading real weights (folders, HF cache, single files) and exporting
  the original single-file layout.
"""
