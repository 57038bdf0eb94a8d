"""Command-line entry points (console commands): evaluate, export, sensitivity, conversion, GLUE preparation, the
CPT report. They parse flags and call the libraries; no library imports them."""
