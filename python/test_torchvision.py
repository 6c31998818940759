"""Test a classifier with seed 002's command line (d-f/basic-image-classification), run by medclf.

    python python/test_torchvision.py -dir PROJECT -classes 2 -batch_size 100 -save resnet_1.pth.tar \
        -architecture resnet18 -result_json_name resnet_1_preds.json -img_size 3 224 224 --use_GPU

See medclf/seed002_scripts.py for the formats written.
"""

import sys

from medclf.workflows.seed002_scripts import main, test_main

if __name__ == "__main__":
    sys.exit(main(test_main))
