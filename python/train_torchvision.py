"""Train a classifier with seed 002's command line (d-f/basic-image-classification), run by medclf.

    python python/train_torchvision.py -project_directory PROJECT -num_epochs 256 -num_classes 2 \
        -learning_rate 0.001 -patience 5 -batch_size 25 -model_save_name resnet_1.pth.tar \
        -img_shape 3 224 224 -architecture resnet18 --use_GPU

See medclf/seed002_scripts.py for the formats written.
"""

import sys

from medclf.workflows.seed002_scripts import main, train_main

if __name__ == "__main__":
    sys.exit(main(train_main))
