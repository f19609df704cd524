"""Circuits: circuits of heads evaluated by mean ablation through the model's hooks (:mod:`.head_circuits`);
the model as a graph of edges (:mod:`.graph`), run edge by edge under three ablations (:mod:`.edge_runs`),
its edges scored by EAP and EAP-IG (:mod:`.edge_attribution`) and by exact edge and path patching
(:mod:`.edge_patching`), all behind :class:`.graph_runner.GraphRunner`; the two faithfulness formulas
(:mod:`.faithfulness`); the path-patching walk, the diagram and MIB-format circuit files
(:mod:`.discovery`), and the heads' roles with the evidence for each (:mod:`.head_roles`)."""
