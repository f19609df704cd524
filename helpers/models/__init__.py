"""Models: where one comes from (:mod:`.sources`: hub names, local directories, ``demo``, GPT-2's
tokenizer), loading it in TransformerLens's compatibility mode (:mod:`.load`), what its architecture
family is and what differs from GPT-2 (:mod:`.architectures`), the patching engine's own forward pass in
pieces (:mod:`.forward`), activations read through hooks that must exist and fire (:mod:`.hooks`), and
the small models the tests and the demo build locally (:mod:`.toys`)."""
