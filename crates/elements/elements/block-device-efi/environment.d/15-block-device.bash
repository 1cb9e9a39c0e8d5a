# Layout chosen by the block-device-efi element.
case "${ARCH:-}" in
    ppc64|ppc64le|ppc64el)
        echo "block-device-efi: Power has no EFI; use block-device-gpt or block-device-mbr" >&2
        exit 1
        ;;
esac
export DIB_BLOCK_DEVICE=efi
