"""The shipped models and the GPT-2 manifest: data, installed as the package `minimech.weights`."""
