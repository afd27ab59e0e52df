"""Machines for cnitrace's own labs and tests: provision.sh (every system package), the microVM
runner (a stock Debian kernel under qemu TCG, for the vm tier) and a Vagrant Kubernetes lab.
"""
