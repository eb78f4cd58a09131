# qkv exercise: softmax
def softmax(x, axis=-1):
    while True:
        pass
