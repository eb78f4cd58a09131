# qkv exercise: softmax
import sys

print("hello from the learner")


def softmax(x, axis=-1):
    print("computing")
    sys.exit(3)
