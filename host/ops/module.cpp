// flashlb._C: an empty Python module whose import loads this library, and with it the
// TORCH_LIBRARY registrations of torch.ops.flashlb.* in the other files.
#include <Python.h>

static struct PyModuleDef flashlb_module = {PyModuleDef_HEAD_INIT, "_C", nullptr, -1, nullptr};

PyMODINIT_FUNC PyInit__C(void) { return PyModule_Create(&flashlb_module); }
