# Layout chosen by the block-device-mbr element.
case "${ARCH:-}" in
    arm64|aarch64)
        echo "block-device-mbr: arm64 needs an EFI layout; use block-device-efi" >&2
        exit 1
        ;;
esac
export DIB_BLOCK_DEVICE=mbr
