"""Circuits: circuits of heads evaluated by mean ablation through the model's hooks (:mod:`.head_circuits`),
the model as a graph of edges with exact edge and path patching, EAP and EAP-IG and edge circuits under
three ablations (:mod:`.graph`), the path-patching walk, the diagram and MIB-format circuit files
(:mod:`.discovery`), and the heads' roles with the evidence for each (:mod:`.head_roles`)."""
