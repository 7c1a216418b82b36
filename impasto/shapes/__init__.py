"""The built-in shapes model's world (captioned images), analyser and training code."""
