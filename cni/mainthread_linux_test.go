package cni

import "runtime"

// The agent (and FakeAgent) judges a caller by /proc/<pid>/ns/net, the
// network namespace of the process's main thread. The tests switch
// namespaces on goroutines locked to threads (testutils.NewNS, ns.Do);
// should one of those run on the main thread, a CheckCaller or NodeInfo
// made meanwhile would be refused as coming from the wrong namespace. Keep
// the main thread to the test binary's main goroutine, as the plugin's own
// main does.
func init() { runtime.LockOSThread() }
