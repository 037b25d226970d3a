"""Lattice thermal conductivity from a universal interatomic potential and the phonon Boltzmann equation.

No LTC label is learned here: a universal potential (:mod:`paraisite.kappa.potentials`) relaxes each crystal with its
symmetry kept (:mod:`paraisite.kappa.relax`), gives second- and third-order force constants by finite displacements
(:mod:`paraisite.kappa.force_constants`, phono3py), and phono3py solves the phonon Boltzmann transport equation
(:mod:`paraisite.kappa.conductivity`). :mod:`paraisite.kappa.pipeline` runs the stages for one crystal and caches
its result (:mod:`paraisite.kappa.cache`); the protocol is :class:`paraisite.kappa.settings.KappaSettings`
(``conf/kappa/``). Needs the optional extra ``paraisite[kappa]`` (phono3py, phonopy, spglib, symfc).
"""
