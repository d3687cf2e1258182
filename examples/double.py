# The original sandbox's own example, as a file for the CLI:
#   codeexec run examples/double.py --arg x=5      -> 10
def main(x):
    return x * 2
