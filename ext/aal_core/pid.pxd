# cdef API of aal_core.pid (see pid.pyx): other extensions may cimport PID
# and call update() at C level.

cdef class PID:
    cdef public double kp, ki, kd
    cdef public double setpoint
    cdef public double integral_limit, epsilon, rate_limit
    cdef public double out_min, out_max
    cdef public int window
    cdef readonly double error, integral, derivative, output
    cdef readonly double v, dv
    cdef readonly long updates
    cdef readonly int streak
    cdef double _last_measurement

    cpdef double update(self, double measurement, double dt) except? -1.0
    cpdef void reset(self)
