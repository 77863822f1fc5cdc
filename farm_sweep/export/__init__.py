"""Exported models: the pickle-free format (`format`), the export command (`command`) and the evaluation of an
export (`evaluate`)."""
