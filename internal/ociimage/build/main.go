// Command build writes a single-layer OCI image-layout tarball from files
// on disk (make image):
//
//	go run ./internal/ociimage/build -o bin/confmesh-image.tar \
//	    -ref docker.io/library/confmesh:dev -entrypoint /usr/local/bin/confmesh \
//	    bin/confmesh=/usr/local/bin/confmesh bin/confmesh-cni=/usr/local/bin/confmesh-cni
//
// It prints the image's manifest digest.
package main

import (
	"flag"
	"fmt"
	"os"
	"strings"

	"github.com/confmesh/confmesh/internal/ociimage"
)

func main() {
	out := flag.String("o", "", "output tarball `FILE`")
	ref := flag.String("ref", "", "image `NAME` recorded in the archive (e.g. docker.io/library/confmesh:dev)")
	entrypoint := flag.String("entrypoint", "", "entrypoint `PATH` in the image")
	flag.Parse()
	if *out == "" || *ref == "" || flag.NArg() == 0 {
		fmt.Fprintln(os.Stderr, "usage: build -o FILE -ref NAME [-entrypoint PATH] SOURCE=DEST...")
		os.Exit(2)
	}
	var spec ociimage.Spec
	if *entrypoint != "" {
		spec.Entrypoint = []string{*entrypoint}
	}
	for _, a := range flag.Args() {
		src, dest, ok := strings.Cut(a, "=")
		if !ok {
			fmt.Fprintf(os.Stderr, "build: %q: want SOURCE=DEST\n", a)
			os.Exit(2)
		}
		spec.Files = append(spec.Files, ociimage.File{Source: src, Dest: dest})
	}
	img, err := ociimage.Build(spec)
	if err == nil {
		err = ociimage.WriteArchive(*out, img, *ref)
	}
	if err != nil {
		fmt.Fprintln(os.Stderr, "build:", err)
		os.Exit(1)
	}
	d, err := img.Digest()
	if err != nil {
		fmt.Fprintln(os.Stderr, "build:", err)
		os.Exit(1)
	}
	fmt.Printf("%s %s %s\n", *out, *ref, d)
}
