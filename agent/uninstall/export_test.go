package uninstall

// Seen reports whether the watch has seen the DaemonSet alive.
func (w *Watch) Seen() bool { return w.seen.Load() }

// CachedVersion is the resourceVersion of the DaemonSet in the watch's
// cache: the last state the watch has delivered ("" when none).
func (w *Watch) CachedVersion() string {
	obj, ok, err := w.informer.GetStore().GetByKey(w.namespace + "/" + w.name)
	if err != nil || !ok {
		return ""
	}
	if m, ok := obj.(interface{ GetResourceVersion() string }); ok {
		return m.GetResourceVersion()
	}
	return ""
}

// Stopped reports whether the watch has ended (its context is done).
func (w *Watch) Stopped() bool { return w.informer.IsStopped() }
