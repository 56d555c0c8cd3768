package snp

import (
	"fmt"
	"sort"
	"strings"
)

// CPUSignature is the CPUID Fn0000_0001_EAX value for a family, model and
// stepping (AMD CPUID specification #25481): a family above 0xf is split
// into base 0xf plus an extended family, the model into low and extended
// nibbles. The VMM puts it in RDX of every vCPU's initial state, so it is
// part of the launch measurement.
func CPUSignature(family, model, stepping uint32) uint32 {
	baseFamily, extFamily := family, uint32(0)
	if family > 0xf {
		baseFamily, extFamily = 0xf, (family-0xf)&0xff
	}
	return extFamily<<20 | (model>>4&0xf)<<16 | baseFamily<<8 | (model&0xf)<<4 | stepping&0xf
}

type fms struct{ family, model, stepping uint32 }

// vcpuTypes are QEMU's AMD EPYC CPU models (target/i386/cpu.c,
// builtin_x86_defs) with the family, model and stepping each reports.
var vcpuTypes = map[string]fms{
	"EPYC":          {23, 1, 2},
	"EPYC-v1":       {23, 1, 2},
	"EPYC-v2":       {23, 1, 2},
	"EPYC-IBPB":     {23, 1, 2},
	"EPYC-v3":       {23, 1, 2},
	"EPYC-v4":       {23, 1, 2},
	"EPYC-Rome":     {23, 49, 0},
	"EPYC-Rome-v1":  {23, 49, 0},
	"EPYC-Rome-v2":  {23, 49, 0},
	"EPYC-Rome-v3":  {23, 49, 0},
	"EPYC-Milan":    {25, 1, 1},
	"EPYC-Milan-v1": {25, 1, 1},
	"EPYC-Milan-v2": {25, 1, 1},
	"EPYC-Genoa":    {25, 17, 0},
	"EPYC-Genoa-v1": {25, 17, 0},
	"EPYC-Turin":    {26, 0, 0},
}

// VCPUTypes lists the vCPU type names VCPUSignature knows, sorted.
func VCPUTypes() []string {
	out := make([]string, 0, len(vcpuTypes))
	for k := range vcpuTypes {
		out = append(out, k)
	}
	sort.Strings(out)
	return out
}

// VCPUSignature returns the CPUID signature of a QEMU vCPU type (the
// -cpu model the node's VMM runs the guest with).
func VCPUSignature(name string) (uint32, error) {
	t, ok := vcpuTypes[name]
	if !ok {
		return 0, fmt.Errorf("unknown vCPU type %q (want one of %s)", name, strings.Join(VCPUTypes(), ", "))
	}
	return CPUSignature(t.family, t.model, t.stepping), nil
}
