//! etcd backend for queuelock (work in progress).
