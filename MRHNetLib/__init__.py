"""MRHNetLib: the engine of SlicerMRHNet (virtual mouse-brain histology from multi-contrast MRI).

Imports without Slicer or Qt. Main entry points::

    from MRHNetLib.data.subject import load_subject          # read a subject folder or files
    from MRHNetLib.simulation.phantom import simulate_subject       # simulated brains (embedded default data)
    from MRHNetLib.network.modelfile import load_model, save_model
"""
__version__ = "0.1.0"
