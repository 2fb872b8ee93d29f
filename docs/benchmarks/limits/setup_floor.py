from setuptools import setup, Extension
from Cython.Build import cythonize
setup(ext_modules=cythonize([Extension("floor_kernel", ["floor_kernel.pyx"], extra_compile_args=["-O3", "-fopenmp", "-march=native"], extra_link_args=["-fopenmp"])], quiet=True))
