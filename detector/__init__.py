"""GoogLeNet R-CNN detector: region classifier, training, inference and the command line."""
