"""fmnist-serve client: `python client/predict.py --help`."""
